"""Evaluation tasks. Importing this package registers every task in `tasks.base.TASKS`."""

from tasks import cnndm, gsm8k, humaneval, mtbench, specbench, wmt  # noqa: F401
