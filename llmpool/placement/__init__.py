"""Placement: which models are resident, decided by the pool itself (SPEC §9).

`ledger` learns what each model needs, `measure` measures it at each load, `placer`
loads on demand, evicts under the per-device budgets and unloads idle models.
"""
