"""Errors about the user's input (files, data, config, machine). Entry points print them as one
message without a traceback and exit non-zero; library users catch ``FocalDetError``."""


class FocalDetError(Exception):
    """A problem with what the user gave us, named in the message (key, file, value)."""


class ClassCountMismatchError(FocalDetError, ValueError):
    """Weights trained for another number of classes, or another kind of class head, where
    they would be used as they are."""
