"""The configuration: sections, the loader, limit grammar, storage URLs, secrets; parsed once."""
