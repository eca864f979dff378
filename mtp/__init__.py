"""mtp: multi-token prediction with mask tokens (Samragh et al., arXiv 2507.11851)."""
