"""The web front end: an HTTP/JSON gateway onto RecommendService and CatalogService, and the pages using it."""
