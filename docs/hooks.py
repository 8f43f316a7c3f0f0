"""MkDocs hook (mkdocs.yml ``hooks``): the model table and the contract's hook table, generated from the code when
the site is built (recsys.models.catalogue), so no page holds a copy that could go stale."""


def on_page_markdown(markdown, page, config, files):
    from recsys.models import catalogue

    return catalogue.render(markdown)
