"""The ``marlhf`` command line entry point and its progress display."""
