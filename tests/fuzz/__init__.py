"""Coverage-guided fuzzing (atheris) of the C code that reads untrusted bytes: the event
scanner and line splitter (``ctrguard/_scan.c``) and the figure encoder
(``ctrguard/_records.c``), built with AddressSanitizer and UndefinedBehaviorSanitizer and
checked against their Python references. ``make fuzz`` runs it; see ``run.py``."""
