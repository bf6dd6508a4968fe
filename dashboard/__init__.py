"""The Streamlit dashboard of prunescope: thin pages in ``views/``, logic in plain modules here,
every chart in ``figures.py``. It never trains: defenses run in worker processes started through
``defenses.runs.folder.start_run``, and the pages read their run folders."""
