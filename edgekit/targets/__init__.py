"""Export targets: each turns a torch model plus its IOSpec into a deployable artifact."""
