"""Index N documents through the official elasticsearch client's bulk helper.

usage: es_bulk.py URL N TIME   (URL like http://127.0.0.1:7650/insert/elasticsearch; TIME the
documents' @timestamp, RFC 3339)
"""
import sys

from elasticsearch import Elasticsearch, helpers

url, n, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
es = Elasticsearch(url, request_timeout=30)
info = es.info()
assert info["version"]["number"].startswith("8."), info
docs = (
    {
        "_index": "nginx-access",
        "_source": {
            "@timestamp": when,
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
