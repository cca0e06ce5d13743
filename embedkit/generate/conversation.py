"""Chat history that keeps fitting the context: the oldest turns are dropped first."""

from __future__ import annotations

from typing import Any

from embedkit.errors import GenerationError


class Conversation:
    """Messages of one chat (an optional system message, then user/assistant turns)."""

    def __init__(self, system: str | None = None) -> None:
        """Start a conversation, opened by ``system`` when given."""
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.dropped = 0  # turns forgotten to stay within the context

    @property
    def messages(self) -> list[dict[str, str]]:
        """All messages, system first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def add(self, role: str, content: str) -> None:
        """Append a message (``user`` or ``assistant``)."""
        self.turns.append({"role": role, "content": content})

    def prompt_ids(self, gen: Any, reserve: int) -> list[int]:
        """Token ids of the conversation with a generation prompt, leaving ``reserve`` positions for the reply.

        Drops the oldest turns (keeping the system message and the last user message) until it fits;
        GenerationError when even that does not fit.
        """
        while True:
            ids = gen.chat_prompt(self.messages)
            if len(ids) + reserve <= gen.n_ctx:
                return ids
            if len(self.turns) <= 1:
                raise GenerationError(
                    f"the message needs {len(ids)} tokens plus {reserve} for the reply, the context holds "
                    f"{gen.n_ctx}; raise -c/--ctx-size"
                )
            # drop the oldest turn, and a reply that would then open the conversation
            self.turns.pop(0)
            self.dropped += 1
            while len(self.turns) > 1 and self.turns[0]["role"] != "user":
                self.turns.pop(0)
                self.dropped += 1
