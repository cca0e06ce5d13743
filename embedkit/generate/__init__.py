"""Text generation above the model: sampling, stop rules, chat templates and the decode loop."""

from embedkit.generate.batch_generator import BatchGenerator, SequenceHandle, SequenceResult, TokenEvent
from embedkit.generate.chat_template import BUILTIN_TEMPLATES, ChatTemplate, builtin_template, template_for_gguf
from embedkit.generate.generator import Generation, GenerationResult, Generator, Timings, default_ctx
from embedkit.generate.sampler import Sampler, SamplerParams, token_distribution
from embedkit.generate.stops import StopReason, StopStrings

__all__ = [
    "BUILTIN_TEMPLATES",
    "BatchGenerator",
    "ChatTemplate",
    "Generation",
    "GenerationResult",
    "Generator",
    "Sampler",
    "SamplerParams",
    "SequenceHandle",
    "SequenceResult",
    "StopReason",
    "StopStrings",
    "Timings",
    "TokenEvent",
    "builtin_template",
    "default_ctx",
    "template_for_gguf",
    "token_distribution",
]
