"""People in the loop at a site: the labeling page over the active-learning queue, and the
queue's interchange with Label Studio and CVAT. The queue format (src/active_learning/oracles.py,
HumanOracle) is the contract: everything here reads it and writes answers through it."""
