"""The analysis service: HTTP API and web page over the results database (``streamimg serve``)."""
