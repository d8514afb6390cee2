# Sphinx configuration of the course website, copied into each language's staging folder by tools/site.py, which
# passes -D language=en or zh_CN.
project = "ddpm-lite"
author = "the ddpm-lite course"
extensions = ["myst_nb"]
myst_enable_extensions = ["dollarmath", "amsmath"]  # the notebooks' $...$ and $$...$$, typeset by MathJax
myst_heading_anchors = 3  # GitHub-style anchors, so the reading map's links to its own sections resolve
nb_execution_mode = "off"  # show the committed outputs; CI executes the notebooks themselves
nb_merge_streams = True
html_theme = "alabaster"  # Sphinx's own theme: nothing to install, readable in both languages
html_theme_options = {"page_width": "1180px", "sidebar_width": "250px", "font_family": "sans-serif"}
html_title = "ddpm-lite"
html_static_path = ["_static"]  # the vendored MathJax and the math notes' PDFs (tools/site.py stages them)
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static: typesets with no CDN
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]  # widget views have no static form
