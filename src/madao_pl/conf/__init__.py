"""Hydra config tree of madao_pl (a package so that it ships with the wheel and tests can compose it)."""
