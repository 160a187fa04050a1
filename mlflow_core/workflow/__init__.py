"""The state machine: project layout, phase definitions, checklists, state, evidence, gates."""
