"""Reporting: what the notebooks show and say about a run, beside the paper.

- ``paper``        the paper's reported values with their sources (``paper_values.csv``)
- ``plots``        figures in the paper's styles, saved with the data behind them and the run's configuration
- ``naming``       where a figure goes and which of the paper's cohorts it is drawn beside
- ``conclusions``  each notebook's conclusion: a function from the run's tables to the sentences it prints
- ``encoders``     comparing encoders and modelling choices: what ran with which weights, paired comparisons
"""
