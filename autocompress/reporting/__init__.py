"""The user's view of a finished or running search, read from what it stored: the
``autocompress report`` HTML page and the ``autocompress ui`` MLflow UI launcher. (The figures a
search logs to MLflow as it runs are ``autocompress.search.figures``.)"""
