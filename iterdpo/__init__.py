"""iterdpo: iterative DPO with synthetic preferences for small language models.

Read the modules in this order: config, data, toyworld, models, losses, generate, reward, pairs,
training, dpo, evaluate, capability, controller, folder, pipeline, runner, plots, bench.
"""

__version__ = "0.1.0"
