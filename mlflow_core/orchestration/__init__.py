"""Orchestration: one module per verb a person runs (`phase`, `report`, `decide`, `runs`,
`checklists`, `data`, `release`, `lr_find`), each taking the project lock with `@locked` around the
one function the CLI calls; a phase's end (`outcome`) and early stops (`stops`); the smoke test and
multi-process launching. Above the diagnostics, reports, training and workflow layers; below the CLI."""
