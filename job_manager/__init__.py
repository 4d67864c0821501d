"""Jobs: their model and rules, the queues and quotas, and the stores that keep them."""
