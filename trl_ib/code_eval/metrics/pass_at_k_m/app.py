"""The metric's Space: evaluate's widget for the module next to this file, as evaluate's own metric Spaces
(e.g. code_eval's app.py) show theirs. A Space runs it as `python app.py`."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

if __name__ == "__main__":  # this folder is also a package of ib-ft: importing it must not start a server
    # The module file, not the folder: in a Space the folder is the app's checkout, named after no module.
    launch_gradio_widget(evaluate.load(str(Path(__file__).with_name("pass_at_k_m.py"))))
