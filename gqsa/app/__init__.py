"""The application around the library: the ``gqsa`` command (``cli``), the jobs it runs on
model folders (``workflow``: compress; ``jobs``: eval, generate, info), the offline demo and the
run report. Nothing in the library imports from here."""
