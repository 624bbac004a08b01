"""Kept on purpose: a file whose name merely contains "test" is application code."""


def pick_winner(scores: dict[str, int]) -> str:
    """Return the contestant with the highest score, ties broken alphabetically."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
