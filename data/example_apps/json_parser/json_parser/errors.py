def format_error(msg: str, offset: int) -> str:
    """Build a human-readable parse error message that names the offending offset."""
    return f"{msg} (at offset {offset})"
