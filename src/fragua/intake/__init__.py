"""The intake queue, importing files into it, the autotrain decision and the HTTP intake API."""
