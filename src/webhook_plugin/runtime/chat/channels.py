"""Channel rules: what happens to an operator's message on each channel. Pure."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["BLOCKING_CHANNELS", "NOTE_CHANNELS", "WINDOW_SECONDS", "Verdict", "decide"]

#: channels that refuse business messages 24 h after the user's last message
BLOCKING_CHANNELS: Final = frozenset({"whatsapp", "instagram", "instagramDm"})
#: channels that cannot carry an agent's message: it is kept as a note
NOTE_CHANNELS: Final = frozenset({"api", "dashboard"})
WINDOW_SECONDS: Final = 24 * 3600.0

Verdict = Literal["sent", "blocked", "noted"]


def decide(
    channel: str, last_user_message_at: float | None, now: float
) -> tuple[Verdict, str | None]:
    """Whether an agent message on ``channel`` is sent, blocked or noted, and why."""
    if channel in NOTE_CHANNELS:
        return "noted", f"the {channel} channel cannot carry agent messages; kept as a note"
    if channel in BLOCKING_CHANNELS:
        if last_user_message_at is None or now - last_user_message_at > WINDOW_SECONDS:
            return "blocked", (
                f"{channel} refuses messages more than 24 h after the user's last message"
            )
    return "sent", None
