"""The study: statistics over runs, the report, headline, figures, the results site, the paper's numbers."""
