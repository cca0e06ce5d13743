"""Stop rules: stop strings over the streamed text, end-of-generation tokens and the token budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopStrings:
    """Streams text while watching for stop strings.

    ``feed(text)`` returns the part of the text that is safe to show: anything that could be the start
    of a stop string is held back until the next piece decides it. Once a stop string appears, the text
    before it is released, ``stopped`` becomes True and the rest is dropped.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        """Watch for every non-empty string of ``stops``."""
        self.stops = [s for s in stops if s]
        self.stopped = False
        self.matched: str | None = None
        self._pending = ""

    def feed(self, text: str) -> str:
        """Add streamed text; return what can be emitted now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._pending + text
        hit, hit_at = None, -1
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (hit_at < 0 or i < hit_at):
                hit, hit_at = s, i
        if hit is not None:
            self.stopped, self.matched, self._pending = True, hit, ""
            return buf[:hit_at]
        hold = self._held_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """Release held-back text at the end of generation."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


class StopReason:
    """Why generation ended (string constants, so JSON output stays plain)."""

    EOG = "eog"
    LENGTH = "length"
    STOP_STRING = "stop"
    CONTEXT = "context"  # only with no token budget (n_predict < 0): the context is full


def is_end_of_generation(token: int, is_eog: Callable[[int], bool], ignore_eos: bool) -> bool:
    """True if ``token`` ends generation (an end-of-generation token, unless ``ignore_eos``)."""
    return not ignore_eos and is_eog(token)


def budget_left(n_generated: int, n_predict: int) -> bool:
    """True while another token may be generated (``n_predict < 0`` means no limit but the context)."""
    return n_predict < 0 or n_generated < n_predict
