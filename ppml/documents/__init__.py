"""Regulatory documents filled from the evidence of one run (DPIA, Art. 30 record, HIPAA Safe Harbor checklist
and Expert Determination worksheet, model card, AI Act Annex IV, plain-language guarantees), their plots and
their PDF. Every statement is rendered from a field of evidence.json and cites it; a field the run did not
produce renders as "not measured", never as a default sentence."""
