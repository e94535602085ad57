"""The elastic core: budgets and their cost, state-dict surgery, the bundle file and sliced-model folders."""
