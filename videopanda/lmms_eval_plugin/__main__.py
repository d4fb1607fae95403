"""`python -m videopanda.lmms_eval_plugin`: print the task folder for lmms-eval's `--include_path`."""
from videopanda.lmms_eval_plugin import TASKS_DIR

print(TASKS_DIR)
