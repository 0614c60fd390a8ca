"""Facts and tasks as data: the fact record and its mastery categories (``facts``), the relations with their
templates and synonyms (``relations`` + ``resources/``), the sources (``sources``: EntityQuestions, JSONL files, the
built-in facts of ``builtin``), the answer criterion (``matching``), the grid's scales (``scales``), per-fact
correctness as stored (``correctness``), and Table 5's tasks (``tasks``, ``builtin_tasks``, ``task_metrics``)."""
