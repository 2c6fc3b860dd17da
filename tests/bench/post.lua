-- post.lua - wrk script: POST a ~400-byte order to /orders, a unique id on
-- every request ("<run>-<thread>-<n>"), so the orders stage creates each one.
--   wrk -s post.lua URL -- RUNID
-- Without RUNID the run id is the start time (seconds).

local threads = {}
local counter = 1

function setup(thread)
    thread:set("tid", counter)
    counter = counter + 1
    table.insert(threads, thread)
end

function init(args)
    run = args[1] or tostring(os.time())
    n = 0
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    body_head = '{"id":"'
    body_tail = '","customerId":"cust-004217","currency":"EUR",' ..
        '"items":[{"sku":"SKU-100234","qty":2,"price":19.99},' ..
        '{"sku":"SKU-883201","qty":1,"price":249.5},' ..
        '{"sku":"SKU-000017","qty":5,"price":3.25}],' ..
        '"shipping":{"name":"Erika Mustermann","street":"Heidestrasse 17",' ..
        '"city":"Koeln","zip":"51147","country":"DE"},' ..
        '"channel":"web","note":"leave at the door, ring twice; gift wrap the second item please"}'
end

function request()
    n = n + 1
    return wrk.format(nil, nil, nil, body_head .. run .. "-" .. tid .. "-" .. n .. body_tail)
end
