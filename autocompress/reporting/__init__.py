"""The user's view of a search: figures logged to MLflow (per search, per trial, per export),
the hypervolume over trials, the ``autocompress report`` HTML/Markdown report, the
``autocompress ui`` MLflow UI launcher and a headless-Chromium check of that UI.

Modules are imported on use: ``autocompress.search`` imports ``reporting.history`` and
``reporting.figures`` while it initialises, so this package imports nothing at load time.
"""
