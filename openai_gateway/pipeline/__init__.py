"""One request's path: identify, read, validate, admit, forward, answer, settle."""
