//! collectd's `write_http` plugin: `POST /collectd/data` (PUTVAL lines or JSON)
//! and `POST /collectd/event` (notifications) into the queues `collectd_data`
//! and `collectd_event`, as the original did.
