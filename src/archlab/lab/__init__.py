"""The lab: experiments, statistics, reports, plots, benchmarks."""
