"""Errors about the user's input (files, data, config, machine). Entry points print them as one
message without a traceback and exit non-zero; library users catch ``FocalDetError``."""


class FocalDetError(Exception):
    """A problem with what the user gave us, named in the message (key, file, value)."""
