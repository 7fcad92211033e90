"""The command lines: ``python -m earnorm.events`` (stats, failed jobs, local Redis, dashboard) and
``python -m earnorm.events.consumer``. They sit above both halves of EarnORM (a consumer given
``--mongo-uri`` runs ``earnorm.init``), so they live here, and the ``__main__`` modules under
``earnorm.events`` only call them.
"""
