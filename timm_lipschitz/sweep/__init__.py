"""``timm-lipschitz sweep``: run a grid of recipe overrides (:mod:`.grid`) and render its tables and studies
(:mod:`.tables`). The names of the former single module are re-exported here."""
from .grid import GridError, collect_results, expand_grid, load_grid, run_from_args, run_sweep
from .points import RECIPE_SHORT, point_name
from .tables import fraction_study, is_standard, objective_table, paper_tables, render, sensitivity

__all__ = ['load_grid', 'expand_grid', 'point_name', 'run_sweep', 'collect_results', 'paper_tables',
           'objective_table', 'sensitivity', 'fraction_study', 'render', 'is_standard', 'run_from_args',
           'GridError', 'RECIPE_SHORT']
