"""Index N documents through the official elasticsearch client's bulk helper.

usage: es_bulk.py URL N   (URL like http://127.0.0.1:7650/insert/elasticsearch)
"""
import sys

from elasticsearch import Elasticsearch, helpers

url, n = sys.argv[1], int(sys.argv[2])
es = Elasticsearch(url, request_timeout=30)
info = es.info()
assert info["version"]["number"].startswith("8."), info
docs = (
    {
        "_index": "nginx-access",
        "_source": {
            "@timestamp": "2026-11-29T10:00:00Z",
            "message": f"GET /item/{i} 200",
            "host": {"name": "web-2"},
            "status": 200,
        },
    }
    for i in range(n)
)
ok, errors = helpers.bulk(es, docs, chunk_size=100)
assert ok == n and not errors, (ok, errors)
print(ok)
