"""prefdata: synthesize, judge, clean and version preference data, and train on it."""

__version__ = "0.1.0"
