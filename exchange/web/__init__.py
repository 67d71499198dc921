"""`exchange-web`: the web console, a client of the cluster that shows it live in a browser (README "Web console").

`feed` is everything it reads from the cluster (and the orders it forwards), `server` the HTTP side, `main` the
process; `static/` the page (plain JavaScript and SVG, nothing fetched from elsewhere).
"""
