"""The controller between rounds, split by job; each part reads on its own:

- ``gates``: the quality gates as data, and the rules on metric records (eligible, best round, converged,
  collapse);
- ``verdict``: the one function from a round's evidence to its decision record (``judge``);
- ``log``: decisions.jsonl, the controller's only state: each round's plan, the evidence, the record;
- ``report``: the iteration log and the yardstick (the answer against offline DPO).

It works on typed records and metric dicts only; it never imports an evaluation or a training stage.
"""
