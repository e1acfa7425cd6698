"""One module per section of the report page; each adds its section and its part of the summary
to a :class:`curation.report.context.Builder`."""
