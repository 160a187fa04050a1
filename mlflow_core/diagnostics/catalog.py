"""Every diagnostic by name, with what it finds in a few words, in the order `wf diagnose auto` runs
them (on equal confidence an earlier one's finding ranks first). A table that imports nothing behind
it, as pip's `commands_dict` does: `wf diagnose --help`, argument checking and the torch-free commands
read it, and a diagnostic's module (diagnostics/<name>.py) is imported only by the registry, when
diagnostics run. A new diagnostic is a line here, its module declaring DIAGNOSTIC and its playbook
diagnostics/<name>.md; a test fails when the table and the modules disagree."""

SUMMARIES: dict[str, str] = {
    "nan_loss": "a non-finite loss, replayed from its last good state",
    "data_leakage": "validation samples identical to training samples",
    "class_imbalance": "missing or skewed training classes",
    "input_scaling": "inputs far outside a normalised range",
    "overfitting": "validation loss rising while training loss falls",
    "resource_inefficiency": "an under-used GPU or a data-bound run",
    "bad_initialization": "a first loss far above ln(classes)",
    "exploding_gradients": "gradient-norm spikes during training",
    "vanishing_gradients": "first layers receiving (almost) no gradient",
    "dead_relu": "ReLU units that never fire",
    "convergence_stall": "a loss that does not fall, or accuracy at chance",
    "underfitting": "the training data not fitted either",
}
NAMES: tuple[str, ...] = tuple(SUMMARIES)
