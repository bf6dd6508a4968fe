"""The dashboard's entry point: page setup and navigation only; each page is a file in views/.

Not pages/: Streamlit also serves a folder named pages/ on its own, and a deep link such as
/explore then runs the page without this entry point (no wide layout, no titled navigation).

Run it with ``prunescope dashboard`` or ``python -m streamlit run dashboard/app.py``.
"""
import sys
from pathlib import Path

import streamlit as st

try:
    import dashboard  # noqa: F401  (installed with the project)
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.common import APP_TITLE, keep_choice_in_url, sidebar

# A local image: a Material icon or an emoji as page_icon makes the browser fetch it from a CDN,
# which fails offline (and the dashboard must work without the internet).
st.set_page_config(page_title=APP_TITLE, page_icon=str(Path(__file__).resolve().parent / "icon.png"), layout="wide")

pages = [
    st.Page("views/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("views/scan.py", title="Scan", icon=":material/radar:"),
    st.Page("views/zoo.py", title="Zoo", icon=":material/grid_view:"),
    st.Page("views/defend.py", title="Defend", icon=":material/shield:"),
    st.Page("views/explore.py", title="Explore", icon=":material/query_stats:"),
    st.Page("views/neuron.py", title="Neuron", icon=":material/hub:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/triggers.py", title="Triggers", icon=":material/target:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
]
page = st.navigation(pages)
# The sidebar is drawn before the page and again after it, into the same place: the page may change
# the model or the run (the Model page's choice, Explore's run), and a sidebar drawn only first would
# name the previous one; one drawn only after would be lost on pages that st.stop() (Streamlit stops
# at the next element, so a ``finally`` cannot draw it).
slot = st.sidebar.empty()
with slot.container():
    sidebar()
keep_choice_in_url(page.title.lower())
page.run()
with slot.container():
    sidebar()
keep_choice_in_url(page.title.lower())
