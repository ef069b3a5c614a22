"""The SQS door, as boto3 sees it.

    python3 tests/python/sqs_boto3.py <SQS endpoint> <HTTP endpoint>
    python3 tests/python/sqs_boto3.py <SQS endpoint> <HTTP endpoint> --keys ID:SECRET,ID2:SECRET2

Without --keys it runs the whole flow against a server whose signatures are
not verified; with --keys (the first key may do anything, the second only
publish to queues named signed*) it checks that signatures are. Exits
non-zero on the first failed check. Without boto3 it skips, unless CI is set.
"""

import base64
import hashlib
import json
import os
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:
    if os.environ.get("CI"):
        print("boto3 cannot be imported, and CI is set", file=sys.stderr)
        sys.exit(1)
    print("skipping: pip install boto3 to run the SQS door's boto3 test")
    sys.exit(0)

SQS, HTTP = sys.argv[1], sys.argv[2]
DEADLINE = 10.0


def client(key="x", secret="x"):
    return boto3.client(
        "sqs",
        endpoint_url=SQS,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def error_code(call):
    """The error code a call fails with (it must fail)."""
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("the call succeeded")


def md5_of_attributes(attributes):
    """AWS's documented algorithm, written independently of the server."""
    digest = hashlib.md5()

    def put(data):
        digest.update(struct.pack(">I", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        attribute = attributes[name]
        put(name.encode())
        put(attribute["DataType"].encode())
        if "BinaryValue" in attribute:
            digest.update(b"\x02")
            value = attribute["BinaryValue"]
            put(value if isinstance(value, bytes) else base64.b64decode(value))
        else:
            digest.update(b"\x01")
            put(attribute["StringValue"].encode())
    return digest.hexdigest()


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


def http(method, path, form=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(HTTP + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read().decode()


def pop(queue):
    status, body = http("GET", "/q/" + queue)
    return json.loads(body) if status == 200 else None


def eventually(what, check_once):
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check_once()
        if value:
            return value
        check(time.monotonic() < deadline, "timed out waiting for " + what)
        time.sleep(0.01)


def attributes(sqs, url, *names):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names) or ["All"])[
        "Attributes"
    ]


def flow():
    sqs = client()

    # Queues: create with attributes, find, list.
    url = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    check(url.endswith("/000000000000/jobs"), url)
    check(sqs.get_queue_url(QueueName="jobs")["QueueUrl"] == url, "GetQueueUrl")
    check(attributes(sqs, url, "VisibilityTimeout")["VisibilityTimeout"] == "30", "created with attributes")

    # A plain message is its body for HTTP consumers, and the other way round.
    sent = sqs.send_message(QueueUrl=url, MessageBody="hello")
    check(sent["MD5OfMessageBody"] == md5("hello"), sent)
    check("MD5OfMessageAttributes" not in sent, sent)
    popped = pop("jobs")
    check(popped is not None and popped["value"] == "hello", popped)
    http("POST", "/q/jobs", {"value": "from http"})
    got = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    check(len(got) == 1 and got[0]["Body"] == "from http", got)
    check(got[0]["MD5OfBody"] == md5("from http"), got)
    check(got[0]["Attributes"]["ApproximateReceiveCount"] == "1", got)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    check(pop("jobs") is None, "deleted")

    # A batch with attributes and a delay.
    with_attributes = {
        "color": {"DataType": "String", "StringValue": "blue & <green>"},
        "size": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        "meta.trace": {"DataType": "String.custom", "StringValue": "t-1"},
    }
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "plain", "MessageBody": "one"},
            {"Id": "attrs", "MessageBody": "two", "MessageAttributes": with_attributes},
            {"Id": "late", "MessageBody": "three", "DelaySeconds": 1},
        ],
    )
    check(not batch.get("Failed"), batch)
    by_id = {entry["Id"]: entry for entry in batch["Successful"]}
    check(set(by_id) == {"plain", "attrs", "late"}, batch)
    check(by_id["attrs"]["MD5OfMessageAttributes"] == md5_of_attributes(with_attributes), batch)
    check(by_id["attrs"]["MD5OfMessageBody"] == md5("two"), batch)
    check(attributes(sqs, url, "ApproximateNumberOfMessagesDelayed")["ApproximateNumberOfMessagesDelayed"] == "1", "delayed")

    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    bodies = sorted(message["Body"] for message in got)
    check(bodies == ["one", "two"], bodies)
    two = next(message for message in got if message["Body"] == "two")
    check(two["MessageAttributes"]["color"]["StringValue"] == "blue & <green>", two)
    check(two["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\x01\xff", two)
    check(two["MD5OfMessageAttributes"] == md5_of_attributes(two["MessageAttributes"]), two)
    check(two["MD5OfMessageAttributes"] == by_id["attrs"]["MD5OfMessageAttributes"], two)
    check(two["MessageId"] == by_id["attrs"]["MessageId"], two)
    check("SentTimestamp" in two["Attributes"], two)
    one = next(message for message in got if message["Body"] == "one")
    check("MessageAttributes" not in one and "MD5OfMessageAttributes" not in one, one)

    # Visibility: hidden, released with 0, received again; filtered attributes.
    # Both are hidden now (the delayed one may have come due: it is let be).
    hidden = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    check(all(message["Body"] == "three" for message in hidden), hidden)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=two["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(
        QueueUrl=url, AttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["color", "meta.*"]
    )["Messages"]
    check(len(again) == 1 and again[0]["Body"] == "two", again)
    check(again[0]["Attributes"]["ApproximateReceiveCount"] == "2", again)
    check(set(again[0]["MessageAttributes"]) == {"color", "meta.trace"}, again)
    check(again[0]["MD5OfMessageAttributes"] == md5_of_attributes(again[0]["MessageAttributes"]), again)
    code = error_code(
        lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=two["ReceiptHandle"], VisibilityTimeout=5)
    )
    check(code == "AWS.SimpleQueueService.MessageNotInflight", code)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=again[0]["ReceiptHandle"], VisibilityTimeout=60)
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "ReceiptHandle": again[0]["ReceiptHandle"]},
            {"Id": "b", "ReceiptHandle": one["ReceiptHandle"]},
            {"Id": "c", "ReceiptHandle": "not a receipt"},
        ],
    )
    check(sorted(e["Id"] for e in deleted["Successful"]) == ["a", "b"], deleted)
    check([e["Code"] for e in deleted["Failed"]] == ["ReceiptHandleIsInvalid"], deleted)

    # The delayed message comes due during a long poll.
    late = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10)["Messages"]
    check(late[0]["Body"] == "three", late)
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "x", "ReceiptHandle": late[0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "y", "ReceiptHandle": "r1.1.1.00", "VisibilityTimeout": 0},
        ],
    )
    check([e["Id"] for e in changed["Successful"]] == ["x"], changed)
    check([e["Id"] for e in changed["Failed"]] == ["y"], changed)
    check(pop("jobs")["value"] == "three", "released over HTTP")

    # A long poll is woken by a publish over HTTP.
    def publish_when_waiting():
        eventually("a long poll", lambda: json.loads(http("GET", "/stats/jobs")[1])["waiting"] >= 1)
        http("POST", "/q/jobs", {"value": "woken"})

    thread = threading.Thread(target=publish_when_waiting)
    started = time.monotonic()
    thread.start()
    woken = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)
    thread.join()
    check(woken["Messages"][0]["Body"] == "woken", woken)
    check(time.monotonic() - started < 15, "the long poll answered at the publish")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=woken["Messages"][0]["ReceiptHandle"])

    # An envelope is readable over HTTP.
    envelope_url = sqs.create_queue(QueueName="envelope")["QueueUrl"]
    sqs.send_message(
        QueueUrl=envelope_url,
        MessageBody="payload",
        MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}},
    )
    envelope = json.loads(pop("envelope")["value"])
    check(envelope["restmq"] == "sqs-envelope/1" and envelope["Body"] == "payload", envelope)
    check(envelope["MessageAttributes"]["k"]["StringValue"] == "v", envelope)

    # Dead letters after maxReceiveCount receives.
    dlq = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
    dlq_arn = attributes(sqs, dlq, "QueueArn")["QueueArn"]
    check(dlq_arn == "arn:aws:sqs:us-east-1:000000000000:jobs-dlq", dlq_arn)
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})
    work = sqs.create_queue(QueueName="work", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    read = json.loads(attributes(sqs, work, "RedrivePolicy")["RedrivePolicy"])
    check(read["deadLetterTargetArn"] == dlq_arn and int(read["maxReceiveCount"]) == 1, read)
    config = json.loads(http("GET", "/config/work")[1])
    check(config["dead_letter"] == "jobs-dlq" and config["max_receives"] == 1, config)
    sqs.send_message(QueueUrl=work, MessageBody="poison")
    first = sqs.receive_message(QueueUrl=work)["Messages"][0]
    sqs.change_message_visibility(QueueUrl=work, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    check("Messages" not in sqs.receive_message(QueueUrl=work), "moved to the dead-letter queue")
    dead = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=5)["Messages"]
    check(dead[0]["Body"] == "poison", dead)

    # Attributes: set, read back, the usual read-only ones.
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={"VisibilityTimeout": "45", "MessageRetentionPeriod": "3600", "DelaySeconds": "1"},
    )
    everything = attributes(sqs, url)
    for name, value in [
        ("VisibilityTimeout", "45"),
        ("MessageRetentionPeriod", "3600"),
        ("DelaySeconds", "1"),
        ("QueueArn", "arn:aws:sqs:us-east-1:000000000000:jobs"),
        ("ApproximateNumberOfMessages", "0"),
        ("ApproximateNumberOfMessagesNotVisible", "0"),
    ]:
        check(everything.get(name) == value, (name, everything))
    sqs.send_message(QueueUrl=url, MessageBody="uses the queue's delay")
    check(attributes(sqs, url, "ApproximateNumberOfMessagesDelayed")["ApproximateNumberOfMessagesDelayed"] == "1", "queue delay")
    check(pop("jobs") is None, "delayed by the queue's DelaySeconds")
    due = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10)["Messages"]
    check(due[0]["Body"] == "uses the queue's delay", due)
    check(attributes(sqs, url, "ApproximateNumberOfMessagesNotVisible")["ApproximateNumberOfMessagesNotVisible"] == "1", "in flight")

    # Purge, list, delete.
    sqs.send_message(QueueUrl=url, MessageBody="to purge", DelaySeconds=0)
    sqs.purge_queue(QueueUrl=url)
    counts = attributes(sqs, url, "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
    check(counts == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}, counts)
    listed = sqs.list_queues(QueueNamePrefix="jobs")["QueueUrls"]
    check(url in listed and dlq in listed and work not in listed, listed)
    check(len(sqs.list_queues()["QueueUrls"]) >= 4, "every queue")
    sqs.delete_queue(QueueUrl=url)
    check(attributes(sqs, url, "VisibilityTimeout")["VisibilityTimeout"] == "30", "settings back to defaults")

    # Errors.
    check(error_code(lambda: sqs.get_queue_url(QueueName="no such queue!")) == "AWS.SimpleQueueService.NonExistentQueue", "nonexistent")
    try:
        sqs.get_queue_url(QueueName="bad/name")
        raise AssertionError("the call succeeded")
    except sqs.exceptions.QueueDoesNotExist:
        pass
    check(error_code(lambda: sqs.create_queue(QueueName="bad name")) == "InvalidParameterValue", "invalid name")
    check(error_code(lambda: sqs.create_queue(QueueName="q.fifo")) == "AWS.SimpleQueueService.UnsupportedOperation", "fifo")
    check(error_code(lambda: sqs.receive_message(QueueUrl=work, MaxNumberOfMessages=11)) == "InvalidParameterValue", "11")
    check(error_code(lambda: sqs.delete_message(QueueUrl=work, ReceiptHandle="garbage")) == "ReceiptHandleIsInvalid", "receipt")
    check(error_code(lambda: sqs.set_queue_attributes(QueueUrl=work, Attributes={"Bogus": "1"})) == "InvalidAttributeName", "attribute")
    check(error_code(lambda: sqs.set_queue_attributes(QueueUrl=work, Attributes={"VisibilityTimeout": "-1"})) == "InvalidAttributeValue", "value")
    duplicate = [{"Id": "same", "MessageBody": "a"}, {"Id": "same", "MessageBody": "b"}]
    check(error_code(lambda: sqs.send_message_batch(QueueUrl=work, Entries=duplicate)) == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", "ids")
    eleven = [{"Id": str(i), "MessageBody": "m"} for i in range(11)]
    check(error_code(lambda: sqs.send_message_batch(QueueUrl=work, Entries=eleven)) == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", "eleven")
    check(json.loads(http("GET", "/stats/work")[1])["len"] == 0, "refused batches sent nothing")
    partial = sqs.send_message_batch(
        QueueUrl=work, Entries=[{"Id": "ok", "MessageBody": "fine"}, {"Id": "bad", "MessageBody": "\x01"}]
    )
    check([e["Id"] for e in partial["Successful"]] == ["ok"], partial)
    check([(e["Id"], e["Code"], e["SenderFault"]) for e in partial["Failed"]] == [("bad", "InvalidMessageContents", True)], partial)
    print("the SQS door passes boto3's flow")


def keys(spec):
    (admin_id, admin_secret), (narrow_id, narrow_secret) = [pair.split(":", 1) for pair in spec.split(",")]
    good = client(admin_id, admin_secret)
    url = good.create_queue(QueueName="signed")["QueueUrl"]
    good.send_message(QueueUrl=url, MessageBody="signed")
    check(good.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "signed", "signed flow")
    wrong = client(admin_id, admin_secret + "x")
    check(error_code(lambda: wrong.send_message(QueueUrl=url, MessageBody="x")) == "SignatureDoesNotMatch", "wrong secret")
    unknown = client("AKIDUNKNOWN", admin_secret)
    check(error_code(lambda: unknown.list_queues()) == "InvalidClientTokenId", "unknown key")
    narrow = client(narrow_id, narrow_secret)
    narrow.send_message(QueueUrl=url, MessageBody="narrow")
    check(error_code(lambda: narrow.receive_message(QueueUrl=url)) == "AccessDenied", "no consume right")
    other = good.get_queue_url(QueueName="other")["QueueUrl"]
    check(error_code(lambda: narrow.send_message(QueueUrl=other, MessageBody="x")) == "AccessDenied", "no right on other")
    check(json.loads(http("GET", "/stats/other")[1])["len"] == 0, "refused sends sent nothing")
    print("signatures are verified")


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[3] == "--keys":
        keys(sys.argv[4])
    else:
        flow()
