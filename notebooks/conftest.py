"""nbval settings for the course notebooks: progress bars (stderr) and rich HTML are not compared."""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr", "text/html", "application/vnd.jupyter.widget-view+json")
