"""The dashboard's entry point: page setup and navigation only; each page is a file in pages/.

Run it with ``prunescope dashboard`` or ``python -m streamlit run dashboard/app.py``.
"""
import sys
from pathlib import Path

import streamlit as st

try:
    import dashboard  # noqa: F401  (installed with the project)
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.common import APP_TITLE, sidebar

st.set_page_config(page_title=APP_TITLE, page_icon=":material/content_cut:", layout="wide")

pages = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("pages/defend.py", title="Defend", icon=":material/shield:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/query_stats:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/triggers.py", title="Triggers", icon=":material/target:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]
page = st.navigation(pages)
sidebar()
page.run()
