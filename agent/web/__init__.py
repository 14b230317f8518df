"""The optional local web part (`web:` section): the page, its JSON API and `/metrics`."""
